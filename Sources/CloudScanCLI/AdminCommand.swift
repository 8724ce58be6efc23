import ArgumentParser
import CloudScanAuth
import CloudScanCore
import CloudScanPostgres
import CloudScanService
import Foundation
import Logging

/// `cloudscan admin`: organizations, projects, the audit trail and bootstrap tokens, straight
/// against PostgreSQL (DATABASE_URL or DB_*), for operators. Every change is audited (via `cli`,
/// actor `--actor` or the login user). Tables by default, `--json` for scripts.
struct AdminCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "admin",
        abstract: "Administer organizations and projects (straight against PostgreSQL; every change audited).",
        subcommands: [
            OrganizationCommands.self, ProjectCommands.self, AuditCommand.self, TokenCommand.self,
            WebhookSecretsCommand.self,
        ])
}

/// `cloudscan admin webhook-secrets reseal`: every webhook secret sealed under the first key of
/// WEBHOOK_SECRET_KEYS (key rotation; sealing secrets stored before encryption at rest).
struct WebhookSecretsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "webhook-secrets", abstract: "Webhook signing secrets at rest.",
        subcommands: [Reseal.self])

    struct Reseal: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Seal every webhook secret under the first key of WEBHOOK_SECRET_KEYS (the others still open old values)."
        )
        @OptionGroup var options: AdminOptions

        func run() async throws {
            guard let box = try FleetSettings.webhookSecrets(FleetSettings.values) else {
                throw CommandFailure(description: "WEBHOOK_SECRET_KEYS is not set")
            }
            let report = try await options.withService { try await $0.resealWebhookSecrets(with: box) }
            options.printRecord(
                .object([
                    "key": .string(box.currentKeyID), "resealed": .int(report.resealed),
                    "already_current": .int(report.current),
                    "unopenable": .array(report.unopenable.map { .string($0.uuidString.lowercased()) }),
                ]))
            if !report.unopenable.isEmpty {
                throw CommandFailure(
                    description:
                        "\(report.unopenable.count) secrets did not open with the listed keys (kept as they were)")
            }
        }
    }
}

/// What every admin subcommand shares: the database, the output format, the audit actor.
struct AdminOptions: ParsableArguments {
    @OptionGroup var database: DatabaseOptions
    @Flag(help: "Print JSON instead of a table.") var json = false
    @Option(help: "Who to record in the audit trail (default: cli:<login user>).") var actor: String?

    var adminActor: AdminActor {
        AdminActor(
            subject: actor ?? "cli:\(ProcessInfo.processInfo.environment["USER"] ?? NSUserName())", via: "cli")
    }

    /// Runs `body` with the admin service on a short-lived pool; service errors become messages.
    func withService<R>(_ body: (AdminService) async throws -> R) async throws -> R {
        var logger = try database.makeLogger(label: "cloudscan.admin", defaultFormat: .text)
        logger.logLevel = max(logger.logLevel, .warning)
        var configuration = database.postgresConfiguration(applicationName: "cloudscan-admin")
        configuration.maximumConnections = 2
        let client = PostgresClient(configuration: configuration, logger: logger)
        let service = AdminService(
            client: client, logger: logger,
            autoCreateProjectsDefault: (FleetSettings.values["AUTO_CREATE_PROJECTS_DEFAULT"] ?? "false") == "true")
        let result: Result<R, any Error>
        do {
            result = .success(try await body(service))
        } catch let error as ScanServiceError {
            result = .failure(CommandFailure(description: "\(error.field.map { "\($0): " } ?? "")\(error.message)"))
        } catch {
            result = .failure(error)
        }
        // One shutdown, whatever happened.
        await client.shutdown()
        return try result.get()
    }

    func print(_ value: JSONValue) {
        let data = Data(value.jsonText.utf8)
        if let object = try? JSONSerialization.jsonObject(with: data),
            let pretty = try? JSONSerialization.data(
                withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        {
            Swift.print(String(decoding: pretty, as: UTF8.self))
        } else {
            Swift.print(value.jsonText)
        }
    }

    /// One object as `key  value` lines.
    func printRecord(_ value: JSONValue) {
        if json { return print(value) }
        guard case .object(let fields) = value else { return print(value) }
        let width = fields.keys.map(\.count).max() ?? 0
        for key in fields.keys.sorted() {
            Swift.print(key.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + Self.cell(fields[key]!))
        }
    }

    /// Rows as a table of the given columns.
    func printTable(_ items: [JSONValue], columns: [String], next: String?) {
        if json {
            return print(.object(["items": .array(items), "next_cursor": next.map { .string($0) } ?? .null]))
        }
        let rows = items.map { item in columns.map { Self.cell(item[$0] ?? .null) } }
        var widths = columns.map(\.count)
        for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
        Swift.print(line(columns.map { $0.uppercased() }))
        for row in rows { Swift.print(line(row)) }
        if let next { Swift.print("(more: --after \(next))") }
    }

    static func cell(_ value: JSONValue) -> String {
        switch value {
        case .null: return "-"
        case .string(let text): return text
        case .bool(let flag): return flag ? "yes" : "no"
        case .int(let number): return String(number)
        case .double(let number): return String(number)
        case .array(let values): return values.map(cell).joined(separator: ",")
        case .object: return value.jsonText
        }
    }
}

/// Comma-separated scan types.
func scanTypeList(_ text: String?) -> [String]? {
    text.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
}

struct OrganizationCommands: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "org", abstract: "Organizations: create, update, get, list.",
        subcommands: [Create.self, Update.self, Get.self, List.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an organization.")
        @OptionGroup var options: AdminOptions
        @Option(help: "Display name.") var name: String
        @Option(help: "Unique slug: lowercase letters, digits, '-'.") var slug: String
        @Option(help: "Days findings and scans are kept (default 90).") var retentionDays: Int?
        @Option(help: "Scans running at once (default 10).") var concurrencyQuota: Int?
        @Option(help: "Scans waiting at once (default 1000).") var queuedScanCap: Int?
        @Option(help: "Enabled scan types, comma-separated (default all).") var scanTypes: String?
        @Option(help: "Create unknown projects on first use: true or false.") var autoCreateProjects: Bool?

        func run() async throws {
            let created = try await options.withService {
                try await $0.createOrganization(
                    .init(
                        name: name, slug: slug, retentionDays: retentionDays, concurrencyQuota: concurrencyQuota,
                        queuedScanCap: queuedScanCap, enabledScanTypes: scanTypeList(scanTypes),
                        autoCreateProjects: autoCreateProjects), actor: options.adminActor)
            }
            options.printRecord(created.json)
        }
    }

    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change an organization's settings; --disable stops new scans (data untouched).")
        @OptionGroup var options: AdminOptions
        @Argument(help: "The organization's id or slug.") var organization: String
        @Option(help: "Display name.") var name: String?
        @Option(help: "Days findings and scans are kept.") var retentionDays: Int?
        @Option(help: "Scans running at once.") var concurrencyQuota: Int?
        @Option(help: "Scans waiting at once.") var queuedScanCap: Int?
        @Option(help: "Enabled scan types, comma-separated.") var scanTypes: String?
        @Option(help: "Create unknown projects on first use: true or false.") var autoCreateProjects: Bool?
        @Flag(help: "Refuse new scans.") var disable = false
        @Flag(help: "Accept new scans again.") var enable = false

        func validate() throws {
            if disable && enable { throw ValidationError("--disable or --enable, not both") }
        }

        func run() async throws {
            let updated = try await options.withService { service in
                try await service.updateOrganization(
                    id: try await service.organizationID(organization),
                    .init(
                        name: name, retentionDays: retentionDays, concurrencyQuota: concurrencyQuota,
                        queuedScanCap: queuedScanCap, enabledScanTypes: scanTypeList(scanTypes),
                        autoCreateProjects: autoCreateProjects, disabled: disable ? true : enable ? false : nil),
                    actor: options.adminActor)
            }
            options.printRecord(updated.json)
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an organization.")
        @OptionGroup var options: AdminOptions
        @Argument(help: "The organization's id or slug.") var organization: String

        func run() async throws {
            let found = try await options.withService { service in
                try await service.getOrganization(id: try await service.organizationID(organization))
            }
            options.printRecord(found.json)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List organizations by slug.")
        @OptionGroup var options: AdminOptions
        @Option(help: "Start after this slug.") var after: String?
        @Option(help: "At most this many (1-500).") var limit = 100

        func run() async throws {
            let (items, next) = try await options.withService {
                try await $0.listOrganizations(after: after, pageSize: limit)
            }
            options.printTable(
                items.map(\.json),
                columns: [
                    "slug", "name", "id", "retention_days", "concurrency_quota", "queued_scan_cap",
                    "enabled_scan_types",
                    "auto_create_projects", "disabled",
                ], next: next)
        }
    }
}

struct ProjectCommands: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "project", abstract: "Projects of an organization: create, update, get, list, archive.",
        subcommands: [Create.self, Update.self, Get.self, List.self, Archive.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a project.")
        @OptionGroup var options: AdminOptions
        @Option(help: "The organization's id or slug.") var org: String
        @Option(help: "Display name.") var name: String
        @Option(help: "The gateway's key for it (unique in the organization).") var key: String
        @Option(help: "Default scan types, comma-separated (default sast,secrets).") var scanTypes: String?
        @Option(help: "Scan time limit in seconds (default 1800).") var timeout: Int?
        @Option(help: "Scanner options, a JSON object.") var scannerOptions: String?

        func run() async throws {
            let parsed = try scannerOptions.map(parseOptions)
            let created = try await options.withService { service in
                try await service.createProject(
                    organizationID: try await service.organizationID(org),
                    .init(
                        name: name, externalKey: key, defaultScanTypes: scanTypeList(scanTypes),
                        scannerOptions: parsed, timeoutSeconds: timeout), actor: options.adminActor)
            }
            options.printRecord(created.json)
        }
    }

    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change a project.")
        @OptionGroup var options: AdminOptions
        @Option(help: "The organization's id or slug.") var org: String
        @Argument(help: "The project's id or external key.") var project: String
        @Option(help: "Display name.") var name: String?
        @Option(help: "A new external key.") var key: String?
        @Option(help: "Default scan types, comma-separated.") var scanTypes: String?
        @Option(help: "Scan time limit in seconds.") var timeout: Int?
        @Option(help: "Scanner options, a JSON object.") var scannerOptions: String?

        func run() async throws {
            let parsed = try scannerOptions.map(parseOptions)
            let updated = try await options.withService { service in
                let (organizationID, projectID) = try await service.project(project, of: org)
                return try await service.updateProject(
                    organizationID: organizationID, id: projectID,
                    .init(
                        name: name, externalKey: key, defaultScanTypes: scanTypeList(scanTypes),
                        scannerOptions: parsed, timeoutSeconds: timeout), actor: options.adminActor)
            }
            options.printRecord(updated.json)
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a project.")
        @OptionGroup var options: AdminOptions
        @Option(help: "The organization's id or slug.") var org: String
        @Argument(help: "The project's id or external key.") var project: String

        func run() async throws {
            let found = try await options.withService { service in
                let (organizationID, projectID) = try await service.project(project, of: org)
                return try await service.getProject(organizationID: organizationID, id: projectID)
            }
            options.printRecord(found.json)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List an organization's projects by key.")
        @OptionGroup var options: AdminOptions
        @Option(help: "The organization's id or slug.") var org: String
        @Flag(help: "Include archived projects.") var archived = false
        @Option(help: "Start after this external key.") var after: String?
        @Option(help: "At most this many (1-500).") var limit = 100

        func run() async throws {
            let (items, next) = try await options.withService { service in
                try await service.listProjects(
                    organizationID: try await service.organizationID(org), includeArchived: archived, after: after,
                    pageSize: limit)
            }
            options.printTable(
                items.map(\.json),
                columns: ["external_key", "name", "id", "default_scan_types", "timeout_seconds", "archived"], next: next
            )
        }
    }

    struct Archive: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Archive a project: no new scans name it; its scans and findings stay.")
        @OptionGroup var options: AdminOptions
        @Option(help: "The organization's id or slug.") var org: String
        @Argument(help: "The project's id or external key.") var project: String

        func run() async throws {
            let archived = try await options.withService { service in
                let (organizationID, projectID) = try await service.project(project, of: org)
                return try await service.archiveProject(
                    organizationID: organizationID, id: projectID,
                    actor: options.adminActor)
            }
            options.printRecord(archived.json)
        }
    }
}

func parseOptions(_ text: String) throws -> JSONValue {
    guard let value = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) else {
        throw ValidationError("--scanner-options: not JSON")
    }
    return value
}

struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit", abstract: "An organization's audit trail, newest first.")
    @OptionGroup var options: AdminOptions
    @Option(help: "The organization's id or slug.") var org: String
    @Option(help: "At most this many.") var limit = 50

    func run() async throws {
        let entries = try await options.withService { service in
            try await service.audit(organizationID: try await service.organizationID(org), limit: limit)
        }
        options.printTable(
            entries.map(\.json), columns: ["at", "actor", "via", "action", "entity_type", "entity_id"], next: nil)
    }
}

/// Mints a bearer token with JWT_HS256_SECRET (bootstrap and development): the first
/// organization's admin token, a platform admin's, a gateway's.
struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Mint an HS256 bearer token for the API (JWT_HS256_SECRET, JWT_ISSUER, JWT_AUDIENCE).",
        discussion: """
            For deployments whose API verifies HS256 tokens (JWT_HS256_SECRET). With a JWKS (JWT_JWKS_URL), \
            tokens come from the identity provider: give its users the org_id claim and the roles \
            (PLATFORM_ADMIN_ROLE, ORG_ADMIN_ROLE) there.
            """)
    @OptionGroup var options: AdminOptions
    @Option(help: "The organization's id or slug (omit for a platform admin).") var org: String?
    @Option(help: "The token's subject.") var subject: String
    @Option(help: "A role (repeatable): org-admin, platform-admin, …") var role: [String] = []
    @Option(help: "Lifetime in seconds (default 3600).") var ttl = 3600

    func run() async throws {
        let environment = FleetSettings.values
        guard let secret = environment["JWT_HS256_SECRET"], let issuer = environment["JWT_ISSUER"],
            let audience = environment["JWT_AUDIENCE"]
        else { throw ValidationError("set JWT_HS256_SECRET (32+ bytes), JWT_ISSUER and JWT_AUDIENCE") }
        guard (1...31_536_000).contains(ttl) else { throw ValidationError("--ttl: 1 to 31536000 seconds") }
        var organizationID: UUID?
        if let org {
            organizationID = try await options.withService { try await $0.organizationID(org) }
        } else if !role.contains(environment["PLATFORM_ADMIN_ROLE"] ?? "platform-admin") {
            throw ValidationError("--org is required unless the token has the platform admin role")
        }
        let token = try await HS256TokenMinter.token(
            secret: secret, issuer: issuer, audience: audience, subject: subject, organizationID: organizationID,
            roles: role, lifetime: TimeInterval(ttl),
            organizationClaim: environment["JWT_ORGANIZATION_CLAIM"] ?? "org_id",
            rolesClaim: environment["JWT_ROLES_CLAIM"] ?? "roles")
        print(token)
    }
}

/// A refused request: printed as `Error: …`, exit status 1 (no usage text: the flags were fine).
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
}
