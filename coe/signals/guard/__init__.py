"""The jailbreak / prompt-injection guard: ``features`` (what a text becomes), ``model`` (the trained
classifier and its artefact), ``training`` (offline: `coe train-guard`)."""
