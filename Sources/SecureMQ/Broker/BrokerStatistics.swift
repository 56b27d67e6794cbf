public import SMQBroker

/// What a broker has done since it started, and what it holds now: the core's own counters
/// (``BrokerCounters``, documented field by field there), read as `statistics.requeued`.
///
/// One list of fields, the core's: a second copy here had already drifted (it lacked
/// `deadlineExceeded` and the metrics counters).
@dynamicMemberLookup
public struct BrokerStatistics: Sendable, Hashable {
    /// The counters, as the core keeps them.
    public var counters: BrokerCounters

    /// No events yet.
    public init() {
        counters = BrokerCounters()
    }

    init(_ counters: BrokerCounters) {
        self.counters = counters
    }

    /// A counter by name: `statistics.completedJobs`.
    public subscript<Value>(dynamicMember keyPath: KeyPath<BrokerCounters, Value>) -> Value {
        counters[keyPath: keyPath]
    }
}
