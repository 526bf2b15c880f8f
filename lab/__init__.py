"""pgha lab: real Debian 12 hosts (systemd-nspawn containers) on one machine.

from lab import Lab
lab = Lab.up(3)            # or Lab.load() for the lab `python -m lab up` made
lab.ssh("pg1", "systemctl is-system-running").stdout
lab.crash("pg2"); lab.start("pg2")
lab.isolate("pg3"); lab.heal("pg3")
Lab.down()
"""

from .api import Lab
from .inventory import Host, Inventory

__all__ = ["Host", "Inventory", "Lab"]
