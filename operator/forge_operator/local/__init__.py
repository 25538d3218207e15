"""The local runner: `forge run` executes the plans the operator would apply, as processes on this
machine (the data pipeline as a process, training through TorchX's local scheduler, serving as a
background server), and keeps each resource's derived status under `.forge/`."""
