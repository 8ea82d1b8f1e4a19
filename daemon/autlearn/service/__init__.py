"""The daemon's service: bootstrap, scheduler, worker, policy, and the thin API object."""
