"""Search strategies (REINFORCE controller, random, evolution), the supernet trainer and its Accelerate loop."""
