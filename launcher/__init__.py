"""In-pod side of elastic-operator: the launcher (local agent), the etcd v3 rendezvous and the
training helpers a user's script imports. Depends on torch and etcd3 only, never on the operator."""
