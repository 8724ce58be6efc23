import ArgumentParser

/// `cloudscan <role>`: one binary, one subcommand per role of the fleet.
@main
struct CloudScan: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cloudscan",
        abstract: "The orchestration core of the cloudscan security-scanning platform.",
        version: "0.1.0",
        subcommands: [
            Migrate.self, Topology.self, API.self, Relay.self, DispatcherCommand.self, RunnerCommand.self,
            FindingsWriterCommand.self, StatusWriterCommand.self, SweeperCommand.self, CleanerCommand.self,
            NotifierCommand.self, AdminCommand.self, Dev.self,
        ]
    )
}
