"""Peak memory of a child process, as the child itself reads it: the source of a ``peak_kib()`` function that a
memory test's child script starts with."""

# VmHWM is the peak RSS of the process since its exec. ru_maxrss is not: it is kept across exec, so a child that a
# large parent started (pytest, with torch and whatever it has read) reports at least the parent's size, and a
# memory bound checked on it could pass whatever the child did.
PEAK_KIB_SOURCE = """
def peak_kib():
    try:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    except OSError:  # not Linux: the best there is
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""
