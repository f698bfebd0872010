import os

import pytest


@pytest.fixture
def child_processes():
    """A function listing the pids of this process's children (sandbox workers still alive)."""

    def list_children() -> list[int]:
        children = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue  # exited while we looked
                if parent == os.getpid():
                    children.append(int(entry))
        return children

    return list_children
