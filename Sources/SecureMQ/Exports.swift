@_exported public import SMQKeys
@_exported public import SMQProtocol
