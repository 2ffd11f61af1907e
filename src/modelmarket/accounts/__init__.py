"""Accounts and API keys: who calls, who provides, who operates."""

from modelmarket.accounts.service import Account, AccountService, IssuedKey, KeyIndex

__all__ = ["Account", "AccountService", "IssuedKey", "KeyIndex"]
