"""Detection rules as data: loader (YAML, validated with file:line:field errors) and engine."""
