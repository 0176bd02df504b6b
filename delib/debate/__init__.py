"""The debate engine: the LangGraph graph, its nodes and the run pipeline around it."""
