public enum SMQProtocolVersion { public static let current: UInt8 = 1 }
