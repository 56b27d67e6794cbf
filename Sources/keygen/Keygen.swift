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
        version: SecureMQVersion.current,
        subcommands: [New.self, Inspect.self, Derive.self, Check.self]
    )

    /// Options whose values may start with '-': Z85 keys can (`-=v7L…`), and ArgumentParser
    /// rejects an argument like `-=…` as an unknown option before any option sees it.
    static let valueOptions: Set<String> = ["--secret", "--meta"]

    static func main() {
        main(joiningValues(Array(CommandLine.arguments.dropFirst())))
    }

    /// Rewrites `--secret VALUE` as `--secret=VALUE`, which ArgumentParser reads whatever VALUE is.
    static func joiningValues(_ arguments: [String]) -> [String] {
        var result: [String] = []
        var index = arguments.startIndex
        while index < arguments.endIndex {
            let argument = arguments[index]
            if argument == "--" {
                result += arguments[index...]
                break
            }
            if valueOptions.contains(argument), index + 1 < arguments.endIndex {
                result.append(argument + "=" + arguments[index + 1])
                index += 2
            } else {
                result.append(argument)
                index += 1
            }
        }
        return result
    }
}

/// A user mistake found while running: printed as `Error: …`, exit status 1.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
