import ArgumentParser
import CloudScanAuth
import CloudScanCore
import CloudScanHTTP
import Foundation
import Logging
import Yams

/// Every role's settings, one way: flags (each command's own) > environment > config.yaml >
/// defaults. config.yaml (`CLOUDSCAN_CONFIG`, else `./config.yaml` when present) is a flat map of
/// the same keys as the environment (`DB_HOST: db.internal`, `NOTIFY_CONCURRENCY: 32`).
///
/// The seed's names are accepted beside the fleet's: `PROMETHEUS_PORT` for `METRICS_PORT`, and
/// `STORAGE_SERVICE_URL` for `STORAGE_URL`.
enum FleetSettings {
    static let aliases = ["PROMETHEUS_PORT": "METRICS_PORT", "STORAGE_SERVICE_URL": "STORAGE_URL"]

    /// The merged settings (read once).
    static let values: [String: String] = {
        do {
            return try merged(
                environment: ProcessInfo.processInfo.environment,
                file: ProcessInfo.processInfo.environment["CLOUDSCAN_CONFIG"])
        } catch {
            FileHandle.standardError.write(Data("cloudscan: \(error)\n".utf8))
            exit(64)
        }
    }()

    /// config.yaml under the environment, with the aliases filled in where the fleet's name is unset.
    static func merged(environment: [String: String], file: String?) throws -> [String: String] {
        var values: [String: String] = [:]
        let path = file ?? (FileManager.default.fileExists(atPath: "config.yaml") ? "config.yaml" : nil)
        if let path {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ValidationError("CLOUDSCAN_CONFIG: cannot read \(path)")
            }
            let document: Any?
            do {
                document = try Yams.load(yaml: text)
            } catch {
                throw ValidationError("\(path): not YAML (\(error))")
            }
            guard let map = document as? [String: Any] else {
                throw ValidationError("\(path): a map of setting names to values, like the environment's")
            }
            for (key, value) in map {
                switch value {
                case let text as String: values[key] = text
                case let flag as Bool: values[key] = flag ? "true" : "false"
                case let number as Int: values[key] = String(number)
                case let number as Double: values[key] = String(number)
                default: throw ValidationError("\(path): \(key) must be a string, number or boolean")
                }
            }
        }
        values.merge(environment) { _, fromEnvironment in fromEnvironment }
        for (alias, name) in aliases where values[name]?.isEmpty ?? true {
            if let value = values[alias] { values[name] = value }
        }
        return values
    }

    /// A whole number setting within `range`; a bad value is an error naming the key.
    static func integer(
        _ key: String, _ fallback: Int, in range: ClosedRange<Int> = 1...Int.max, from values: [String: String] = values
    ) throws -> Int {
        guard let text = values[key], !text.isEmpty else { return fallback }
        guard let value = Int(text.trimmingCharacters(in: .whitespaces)), range.contains(value) else {
            let bound =
                range.upperBound == Int.max ? "≥ \(range.lowerBound)" : "\(range.lowerBound)…\(range.upperBound)"
            let named = aliases.first { $0.value == key }.map { "\(key) (or \($0.key))" } ?? key
            throw ValidationError("\(named): '\(text)' is not a whole number \(bound)")
        }
        return value
    }

    /// Which artifact URLs this role accepts: https and s3; `ARTIFACT_HTTPS_HOSTS` (comma-separated,
    /// `*.example.com` allowed) narrows https to those hosts; `ARTIFACT_FILE_ROOTS`
    /// (comma-separated directories, `{organization_id}` allowed) admits file URLs under them.
    /// `ARTIFACT_POLICY=development` (and `cloudscan dev`) accepts http and files anywhere.
    static func artifactPolicy(
        _ values: [String: String] = values, development: Bool = false, logger: Logger? = nil
    ) throws -> ArtifactPolicy {
        func list(_ key: String) -> [String] {
            (values[key] ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter {
                !$0.isEmpty
            }
        }
        switch values["ARTIFACT_POLICY"] ?? "" {
        case "development":
            logger?.critical(
                "ARTIFACT_POLICY=development: http and file artifacts anywhere are accepted. Development only.")
            return .development
        case "", "standard":
            break
        default:
            throw ValidationError("ARTIFACT_POLICY: 'standard' (the default) or 'development'")
        }
        if development { return .development }
        let roots = list("ARTIFACT_FILE_ROOTS")
        if let bad = roots.first(where: {
            !$0.hasPrefix("/") || ArtifactPolicy.cleanFilePath("file://" + ($0 == "/" ? "/x" : $0)) == nil
        }) {
            throw ValidationError("ARTIFACT_FILE_ROOTS: '\(bad)' is not a clean absolute directory")
        }
        return ArtifactPolicy(fileRoots: roots, httpsHosts: list("ARTIFACT_HTTPS_HOSTS"))
    }

    /// Networks webhooks may reach although internal: `WEBHOOK_ALLOWED_NETWORKS` (comma-separated
    /// CIDRs, e.g. `127.0.0.0/8` for a receiver on the same machine); loopback in development.
    static func webhookScreen(_ values: [String: String] = values, development: Bool = false) throws
        -> DestinationScreen
    {
        var screen = development ? DestinationScreen.development : DestinationScreen()
        for item in (values["WEBHOOK_ALLOWED_NETWORKS"] ?? "").split(separator: ",") {
            let text = item.trimmingCharacters(in: .whitespaces)
            guard let network = IPNetwork(text) else {
                throw ValidationError("WEBHOOK_ALLOWED_NETWORKS: '\(text)' is not an address or CIDR network")
            }
            screen.allowedNetworks.append(network)
        }
        return screen
    }

    /// The keys that seal webhook secrets at rest: `WEBHOOK_SECRET_KEYS=<id>:<base64 of 32
    /// bytes>[,…]`, the first sealing, all opening. Unset in development: a fixed development key;
    /// unset elsewhere: none (subscriptions cannot be created, sealed secrets cannot be opened).
    static func webhookSecrets(_ values: [String: String] = values, development: Bool = false, logger: Logger? = nil)
        throws -> SecretBox?
    {
        if let text = values["WEBHOOK_SECRET_KEYS"], !text.isEmpty {
            do {
                return try SecretBox.parse(text)
            } catch {
                throw ValidationError("WEBHOOK_SECRET_KEYS: \(error)")
            }
        }
        if development {
            logger?.warning("WEBHOOK_SECRET_KEYS is not set: webhook secrets are sealed with the development key")
            return .development
        }
        logger?.warning("WEBHOOK_SECRET_KEYS is not set: webhook subscriptions cannot be created or delivered")
        return nil
    }
}
