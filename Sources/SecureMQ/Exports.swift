@_exported public import SMQKeys
