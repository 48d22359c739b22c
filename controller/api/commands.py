"""On-call commands, carried by an annotation so that Argo CD sees no drift in the spec.

    modelrollout.io/command: '{"action": "promote", "id": "<uuid>", "actor": "alice", "full": true}'

The controller applies each command id at most once and records it (with the actor) in status.

The actor is only as true as the writer: the admission policy in deploy/base/command-policy.yaml (also in the
chart) refuses a new or changed annotation unless its text contains `"actor": "<requester>"` (or the compact
`"actor":"<requester>"`). A substring test on JSON text is sound only if that text can mean nothing else, so
parse_command refuses what could hide a second actor: duplicate keys (`{"actor": "bob", "actor": "alice"}`,
where the last one wins), keys other than action/id/actor/full, and values that are objects or arrays
(`{"actor": "alice", "x": {"actor": "bob"}}`). A string value cannot hide the substring: a quote inside a
JSON string is escaped (`\\"`). The policy also refuses requesters whose name holds a quote or a backslash, which
JSON escapes (and an escape sequence in the actor could spell someone else's name).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum

COMMAND_ANNOTATION = "modelrollout.io/command"
COMMAND_KEYS = ("action", "id", "actor", "full")
MAX_TEXT = 512  # longest id or actor: a ServiceAccount user name can reach about 340 characters


class CommandAction(StrEnum):
    ABORT = "abort"  # stop now and go back to stable
    PROMOTE = "promote"  # go past the current pause or step (full: past every remaining step)
    RETRY = "retry"  # run a failed, rolled-back or paused-on-failure rollout again
    ROLLBACK = "rollback"  # go back to the previous version, also after success


class CommandError(ValueError):
    """The annotation does not hold a command the controller understands."""


@dataclass(frozen=True)
class Command:
    id: str
    action: CommandAction
    actor: str
    full: bool = False  # promote --full

    @property
    def label(self) -> str:
        return "promote --full" if self.full else str(self.action)

    def to_annotation(self) -> str:
        body: dict[str, object] = {"action": str(self.action), "id": self.id, "actor": self.actor}
        if self.full:
            body["full"] = True
        # ensure_ascii=False: a non-ASCII name is written as itself, so the admission policy's substring test
        # (against the requester's name as the API server has it) finds it.
        return json.dumps(body, sort_keys=True, ensure_ascii=False)


def unreadable_key(text: str) -> str:
    """The handledCommands entry of an annotation text parse_command refuses: each distinct text is refused once,
    also after a restart, and the text itself is not stored."""
    return "unreadable:" + hashlib.sha256(text.encode(errors="surrogatepass")).hexdigest()[:16]


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json.loads' object_pairs_hook: a key given twice is refused, not silently overwritten by the last one."""
    body: dict[str, object] = {}
    for name, value in pairs:
        if name in body:
            raise CommandError(f"{COMMAND_ANNOTATION}: key {name!r} appears more than once")
        body[name] = value
    return body


def parse_command(text: str) -> Command:
    """Parse the annotation's value; raise CommandError saying what is wrong."""
    try:
        body = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{COMMAND_ANNOTATION} is not JSON: {exc.msg}") from None
    except CommandError:  # a duplicate key, from the hook
        raise
    except (ValueError, RecursionError) as exc:  # an integer past Python's digit limit, nesting past recursion
        raise CommandError(f"{COMMAND_ANNOTATION} cannot be read ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise CommandError(f"{COMMAND_ANNOTATION} must be a JSON object")
    unknown = sorted(set(body) - set(COMMAND_KEYS))
    if unknown:
        raise CommandError(f"{COMMAND_ANNOTATION}: unknown key(s) {', '.join(map(repr, unknown))}; "
                           f"a command has only {', '.join(COMMAND_KEYS)}")
    nested = sorted(name for name, value in body.items() if isinstance(value, dict | list))
    if nested:
        raise CommandError(f"{COMMAND_ANNOTATION}: {', '.join(map(repr, nested))} must be a string or boolean, "
                           "not an object or array")
    action_text = body.get("action")
    full = body.get("full", False)
    if action_text == "promote-full":  # the CLI spelling `promote --full` as one word
        action_text, full = "promote", True
    try:
        action = CommandAction(action_text)
    except ValueError:
        choices = ", ".join(item.value for item in CommandAction)
        raise CommandError(f"{COMMAND_ANNOTATION}: action must be one of {choices}, got {action_text!r}") from None
    command_id = body.get("id")
    if not isinstance(command_id, str) or not command_id:
        raise CommandError(f"{COMMAND_ANNOTATION}: id must be a non-empty string")
    actor = body.get("actor")
    if not isinstance(actor, str) or not actor:
        raise CommandError(f"{COMMAND_ANNOTATION}: actor must be a non-empty string")
    # Both are recorded in status.history, which on-call engineers read in a terminal.
    for key, value in (("id", command_id), ("actor", actor)):
        if len(value) > MAX_TEXT or not value.isprintable():
            raise CommandError(f"{COMMAND_ANNOTATION}: {key} must be printable text of at most {MAX_TEXT} "
                               "characters (no control characters)")
    if not isinstance(full, bool):
        raise CommandError(f"{COMMAND_ANNOTATION}: full must be true or false")
    if full and action is not CommandAction.PROMOTE:
        raise CommandError(f"{COMMAND_ANNOTATION}: full applies only to promote")
    return Command(id=command_id, action=action, actor=actor, full=full)
