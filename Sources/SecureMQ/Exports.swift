@_exported public import SMQKeys
@_exported public import SMQProtocol
@_exported public import SMQBroker
