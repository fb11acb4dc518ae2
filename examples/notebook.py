# %% [markdown]
# # HPCSerA from a notebook
# Each `# %%` block is a cell (Jupyter, VS Code). Set HPCSERA_SERVER and
# HPCSERA_TOKEN in the environment, or pass them to `Client` directly.

# %%
import os

from hpcsera_client import Client, FunctionFailed

hpc = Client(os.environ["HPCSERA_SERVER"], os.environ["HPCSERA_TOKEN"])
info = hpc.capabilities()
print("connected as", info["token"]["user"], "to HPCSerA", info["version"])

# %% A function is called like a Python function; its JSON result is a dict.
greeting = hpc.call("hello", {"name": "notebook"})
print(greeting["greeting"])

# %% Longer work: submit several calls, then collect them.
handles = [hpc.submit("sleeper", {"seconds": 0.2 * i}) for i in range(1, 4)]
results = [h.result(timeout=120) for h in handles]
print("collected", len(results), "results:", results)

# %% A failing function raises, with its exit code and the end of its stderr.
try:
    hpc.call("fail3")
except FunctionFailed as failure:
    print("fail3 failed with exit code", failure.exit_code)
