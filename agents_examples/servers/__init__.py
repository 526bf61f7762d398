"""Example MCP tool servers (stdio, official ``mcp`` SDK) for the demo and the tests.

Run each as a module from the repository root, ``python -m agents_examples.servers.<name>``;
see ``README.md`` here.  Running a file by path would put this directory on ``sys.path``,
where ``email.py`` and ``secrets.py`` would shadow the standard library.
"""
