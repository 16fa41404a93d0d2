"""Controller, REINFORCE and the Accelerate search loop."""
