"""rowcall: the domain package every rowcall Lambda function imports (shipped as a layer)."""
