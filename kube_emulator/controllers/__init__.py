"""Controllers of the local cluster's built-in kinds (a minimal kube-controller-manager)."""
