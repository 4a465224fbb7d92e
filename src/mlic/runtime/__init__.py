"""Where and how this process computes: device, seeding, CPU count, allocator, distributed ranks, console, precision."""
