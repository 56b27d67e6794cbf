import Logging
import SecureMQ

// TEMPORARY (dropped at merge): the list forms the worker and client branches add. Until they
// land these forward to the first broker only, so `smq` compiles against main.

extension Worker {
    static func connect(
        to brokers: [BrokerAddress], keyPair: KeyPair, service: String, options: Options = Options(),
        context: SecureContext = .shared, logger: Logger = Logger(label: "securemq.worker")
    ) async throws(SecureMQError) -> Worker {
        guard let first = brokers.first else { throw SecureMQError(.invalidConfiguration, "no broker given") }
        return try await connect(to: first.endpoint, brokerKey: first.publicKey, keyPair: keyPair, service: service,
                                 options: options, context: context, logger: logger)
    }
}

extension Client {
    static func connect(
        to brokers: [BrokerAddress], keyPair: KeyPair, options: Options = Options(),
        context: SecureContext = .shared, logger: Logger = Logger(label: "securemq.client")
    ) async throws(SecureMQError) -> Client {
        guard let first = brokers.first else { throw SecureMQError(.invalidConfiguration, "no broker given") }
        return try await connect(to: first.endpoint, brokerKey: first.publicKey, keyPair: keyPair,
                                 options: options, context: context, logger: logger)
    }
}
