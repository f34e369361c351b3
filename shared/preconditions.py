"""``If-Match`` as the service understands it (RFC 9110 §13.1.1): the versions a conditional write accepts."""

from __future__ import annotations

from dataclasses import dataclass

from shared.account import Account
from shared.errors import PreconditionFailed


@dataclass(frozen=True, slots=True)
class IfMatch:
    """``If-Match: *`` (any existing version) or a list of entity tags, the version in quotes.

    Weak tags (``W/"7"``) are kept only to explain the refusal: under If-Match a weak tag never matches.
    """

    any_version: bool = False
    versions: frozenset[int] = frozenset()
    weak_tags: tuple[str, ...] = ()

    def check(self, state: Account) -> None:
        """Raise ``PreconditionFailed`` unless a write to ``state`` may go ahead."""
        if not state.exists:
            raise PreconditionFailed(f"account {state.id} does not exist, so If-Match cannot match")
        if self.any_version or state.version in self.versions:
            return
        if not self.versions:
            raise PreconditionFailed(
                f"If-Match holds only weak entity tags ({', '.join(self.weak_tags)}), which never match a "
                f'write (RFC 9110 §13.1.1); send the strong tag from the ETag, e.g. If-Match: "{state.version}"'
            )
        wanted = " or ".join(str(v) for v in sorted(self.versions))
        raise PreconditionFailed(f"account {state.id} is at version {state.version}, not {wanted}")
