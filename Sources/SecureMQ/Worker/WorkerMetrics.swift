import CoreMetrics

/// The swift-metrics handles a worker records into, made once when it connects: recording is
/// then one call on a handle, with no allocation per fragment.
///
/// - `securemq_worker_fragments_total{outcome}`: `done` (a DONE sent), `rejected` (a REJECT
///   sent: the handler refused, the result was too large, the WORK was malformed), `dropped`
///   (a result for a broker connection since replaced, PROTOCOL.md C57).
/// - `securemq_worker_handler_seconds`: how long the handler took per fragment.
/// - `securemq_worker_brokers_connected`: broker connections up now. A ``CoreMetrics/Meter``
///   (a gauge that each worker moves up and down), so several workers in one process add up
///   instead of overwriting one another; exporters publish it as a gauge.
struct WorkerMetrics: Sendable {
    let done: Counter
    let rejected: Counter
    let dropped: Counter
    let handlerTime: CoreMetrics.Timer
    let brokersConnected: Meter

    init(factory: (any MetricsFactory)?) {
        let factory = factory ?? MetricsSystem.factory
        done = Counter(label: "securemq_worker_fragments_total", dimensions: [("outcome", "done")], factory: factory)
        rejected = Counter(label: "securemq_worker_fragments_total", dimensions: [("outcome", "rejected")], factory: factory)
        dropped = Counter(label: "securemq_worker_fragments_total", dimensions: [("outcome", "dropped")], factory: factory)
        handlerTime = CoreMetrics.Timer(label: "securemq_worker_handler_seconds", factory: factory)
        brokersConnected = Meter(label: "securemq_worker_brokers_connected", factory: factory)
    }
}
