"""Files every part reads or writes: user data as JSONL with ``file:line`` errors (``jsonl``), artefacts
as pickle-free ``.npz`` (``npz``), and deterministic train/validation splits (``splits``)."""
