"""Accounts and API keys: who calls, who provides, who operates."""

from modelmarket.accounts.ports import ROLES, Account, Role, StoredKey
from modelmarket.accounts.service import AccountService, IssuedKey, KeyIndex

__all__ = ["ROLES", "Account", "AccountService", "IssuedKey", "KeyIndex", "Role", "StoredKey"]
