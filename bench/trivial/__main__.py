"""N resources of a kind whose provider does nothing: what the engine alone costs for N resources.

pgha's no-change `pulumi preview` and `pulumi up` are compared with this program's, at the same
resource count (stack config `count`), so that only pgha's own overhead shows in the ratio.
"""

import pulumi
from noop import Noop

count = pulumi.Config().require_int("count")
for index in range(count):
    Noop(f"noop-{index:03d}", {"index": index, "label": f"noop {index}"})
pulumi.export("count", count)
