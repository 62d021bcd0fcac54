"""wallwatch: see, prove and understand network censorship of messaging apps and VPNs."""

__version__ = "0.1.0"
