import ArgumentParser
import CloudScanMetrics
import CloudScanPostgres
import Foundation
import Logging

/// Options every role shares: where PostgreSQL is and how to log.
struct DatabaseOptions: ParsableArguments {
    @Option(name: .customLong("database-url"), help: "postgresql:// URL (env DATABASE_URL; DB_* and PG* also apply).")
    var databaseURL: String?

    @Option(help: "search_path for every session (env DB_SCHEMA).")
    var schema: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (env LOG_LEVEL).")
    var logLevel: String?

    /// flags > environment > defaults.
    func postgresConfiguration(
        environment: [String: String] = FleetSettings.values, applicationName: String
    ) -> PostgresConfiguration {
        var configuration = PostgresConfiguration(environment: environment, applicationName: applicationName)
        if let databaseURL { configuration.connectionString = databaseURL }
        configuration.searchPath = schema ?? environment["DB_SCHEMA"]
        return configuration
    }

    func makeLogger(
        label: String, environment: [String: String] = FleetSettings.values,
        defaultFormat: FleetLogging.Format = .json
    ) throws -> Logger {
        try makeFleetLogger(label: label, level: logLevel, environment: environment, defaultFormat: defaultFormat)
    }
}

/// Logging bootstrapped (LOG_FORMAT json|text) and a logger at LOG_LEVEL; either bad value is named.
func makeFleetLogger(
    label: String, level flag: String?, environment: [String: String], defaultFormat: FleetLogging.Format
) throws -> Logger {
    let formatText = environment["LOG_FORMAT"] ?? defaultFormat.rawValue
    guard let format = FleetLogging.Format(rawValue: formatText) else {
        throw ValidationError("LOG_FORMAT: '\(formatText)' is not json or text")
    }
    FleetLogging.bootstrap(format: format)
    let text = flag ?? environment["LOG_LEVEL"] ?? "info"
    guard let level = Logger.Level(rawValue: text) else {
        throw ValidationError("LOG_LEVEL: '\(text)' is not one of trace, debug, info, notice, warning, error, critical")
    }
    var logger = Logger(label: label)
    logger.logLevel = level
    return logger
}

/// Where the Migrations/ directory is: the flag, then MIGRATIONS_DIR, then ./Migrations, then the
/// one beside the build folder the binary runs from.
func locateMigrations(_ flag: String?) throws -> URL {
    try locateRepositoryFile("Migrations", flag: flag ?? FleetSettings.values["MIGRATIONS_DIR"])
}

/// A file of the repository (Migrations, topology): the explicit path, else relative to the
/// working directory, else relative to the binary's build folder.
func locateRepositoryFile(_ relativePath: String, flag: String?) throws -> URL {
    if let flag { return URL(fileURLWithPath: flag) }
    var candidates = [
        URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(relativePath)
    ]
    var directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    for _ in 0..<5 {
        candidates.append(directory.appendingPathComponent(relativePath))
        directory = directory.deletingLastPathComponent()
    }
    guard let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0.path) }) else {
        throw ValidationError("\(relativePath) not found; pass its path explicitly")
    }
    return found
}
