"""The end-to-end pipeline: recap -> enhance -> llm2clip -> train -> eval -> report."""
