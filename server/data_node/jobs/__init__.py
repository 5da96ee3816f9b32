"""Build and import jobs: requests, the job process, persisted state and the publish of outputs."""
