"""``clipforge-pipeline``: recap -> enhance -> llm2clip -> train -> eval -> report in one run folder."""
