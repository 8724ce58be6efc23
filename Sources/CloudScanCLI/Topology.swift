import ArgumentParser
import CloudScanAMQP
import Crypto
import Foundation

/// `cloudscan topology apply|export`.
struct Topology: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Declare the AMQP topology, or export it as RabbitMQ definitions.",
        subcommands: [Apply.self, Export.self])

    struct Common: ParsableArguments {
        @Option(help: "The topology file (env TOPOLOGY_FILE; default topology/topology.json).")
        var file: String?

        func load() throws -> AMQPTopology {
            let path = file ?? FleetSettings.values["TOPOLOGY_FILE"] ?? "topology/topology.json"
            do {
                return try AMQPTopology.load(from: URL(fileURLWithPath: path))
            } catch {
                throw ValidationError("cannot read topology file \(path): \(error)")
            }
        }
    }

    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Declare exchanges, queues and bindings idempotently; report drift.")
        @OptionGroup var common: Common
        @Option(name: .customLong("amqp-url"), help: "amqp:// URL (env AMQP_URL).") var amqpURL: String?

        func run() async throws {
            let url = amqpURL ?? FleetSettings.values["AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/"
            let report = try await common.load().apply(broker: try AMQPConfiguration(url: url))
            print("declared \(report.declared.count) objects")
            for problem in report.problems { print("DRIFT: \(problem.message)") }
            if !report.isClean { throw ExitCode(3) }
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a definitions file for `rabbitmqctl import_definitions`.")
        @OptionGroup var common: Common
        @Option(help: "The vhost the definitions are for.") var vhost: String = "cloudscan"
        @Option(help: "Output file (default: standard output).") var output: String?
        @Option(
            help: """
                Add the runners' broker user of this name (publish to cloudscan.findings and cloudscan.status \
                only), with the password in RUNNER_AMQP_PASSWORD.
                """)
        var runnerUser: String?

        func run() async throws {
            var user: AMQPTopology.RunnerUser?
            if let runnerUser {
                guard let password = FleetSettings.values["RUNNER_AMQP_PASSWORD"], password.utf8.count >= 16 else {
                    throw ValidationError("--runner-user needs RUNNER_AMQP_PASSWORD (16+ bytes)")
                }
                user = AMQPTopology.RunnerUser(name: runnerUser, passwordHash: Self.rabbitHash(password))
            }
            let definitions = try common.load().definitions(virtualHost: vhost, runnerUser: user)
            let data = try JSONSerialization.data(withJSONObject: definitions, options: [.prettyPrinted, .sortedKeys])
            if let output {
                try data.write(to: URL(fileURLWithPath: output))
            } else {
                FileHandle.standardOutput.write(data)
                print()
            }
        }

        /// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ‖ SHA-256(salt ‖ password)), 4
        /// random salt bytes.
        static func rabbitHash(_ password: String) -> String {
            var generator = SystemRandomNumberGenerator()
            let salt = (0..<4).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let digest = SHA256.hash(data: salt + Array(password.utf8))
            return Data(salt + Array(digest)).base64EncodedString()
        }
    }
}
