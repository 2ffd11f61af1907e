"""The Transmutation Lab: feedback on calls, and (with ``billing.replay``) the what-ifs that tell an operator
whether a version or a price is better (docs/lab.md)."""

from modelmarket.lab.feedback import Feedback, FeedbackService, VersionFeedback

__all__ = ["Feedback", "FeedbackService", "VersionFeedback"]
