"""The emulated kube-apiserver; :mod:`kube_emulator.apiserver.server` says what it serves and
how it differs from a real one."""
