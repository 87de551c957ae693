"""Fuzzing of every reader of user files: the targets (:mod:`.targets`), the mutations of valid
files (:mod:`.mutate`), the isolated runner that bounds time and memory (:mod:`.isolate`) and the
verdict on each outcome (:mod:`.judge`). ``tests/test_fuzz_readers.py`` runs a short,
reproducible pass in ``make test``; ``make fuzz`` runs :mod:`.long_run` for ``FUZZ_MINUTES``."""
