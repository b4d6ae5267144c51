"""The search package's user-input error."""

from search_space.errors import UserError


class SearchError(UserError):
    """Bad search input (objectives, budgets, sampler, storage, devices, resume): one line naming it."""
