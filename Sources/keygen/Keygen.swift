import ArgumentParser
import SecureMQ

/// `keygen`: make, inspect and check CURVE certificates. A thin shell over SecureMQ's
/// `Certificate` and `Allowlist`; everything it checks, the library checks.
@main
struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make, inspect and check SecureMQ CURVE certificates.",
        discussion: """
            A certificate is two files: NAME.key (public: give it to peers, put it in the broker's \
            allowlist) and NAME.key_secret (secret: mode 0600, never share or commit it). keygen \
            reads the files pyzmq and CZMQ write, and writes files both of them read.

            Examples:
              keygen new broker --dir certs
              keygen new worker-1 --dir certs --role worker --weight 4
              cp certs/worker-1.key certs/allowed/     # let worker-1 in (public file only)
              keygen inspect certs/broker.key
              keygen derive certs/broker.key_secret
              keygen check certs/allowed
            """,
        subcommands: [New.self, Inspect.self, Derive.self, Check.self]
    )
}

/// A user mistake found while running: printed as `Error: …`, exit status 1.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
