"""Data-parallel training: rank facts and collectives (ranks), the elastic launcher (launch), the DDP
communication clock (commclock)."""
