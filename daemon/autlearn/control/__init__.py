"""The control plane: protocol, ZeroMQ server and client, autlearnctl, CURVE keys, systemd notify."""
