"""The emulated nodes' side: scheduler, kubelet, process runtime and the Node objects; they
talk to the API server only over HTTP, as kube components do."""
