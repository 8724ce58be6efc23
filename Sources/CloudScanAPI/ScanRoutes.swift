import CloudScanAuth
import CloudScanCore
import CloudScanMetrics
import CloudScanService
import Foundation
import HTTPTypes
import Hummingbird
import Logging

/// The HTTP API: `/api/v1/scans…`, `/healthz`, `/readyz`.
public struct ScanAPI: Sendable {
    /// Largest request body accepted.
    public static let maximumBodyBytes = ScanCreateMessage.maximumBodyBytes

    let service: ScanService
    let authenticator: any Authenticator
    let readiness: @Sendable () async -> [String: Bool]
    let metrics: FleetMetrics
    let policy: AdminPolicy

    /// `readiness` reports each dependency (e.g. `postgres`, `broker`) as up or down; `metrics` is
    /// the process's registry, served on `/metrics`; `policy` names the administration roles.
    public init(
        service: ScanService, authenticator: any Authenticator, metrics: FleetMetrics = FleetMetrics(),
        policy: AdminPolicy = AdminPolicy(), readiness: @escaping @Sendable () async -> [String: Bool]
    ) {
        self.policy = policy
        self.service = service
        self.authenticator = authenticator
        self.readiness = readiness
        self.metrics = metrics
    }

    /// The router, for an `Application` (the composition root and the tests both call this).
    public func router() -> Router<APIRequestContext> {
        let router = Router(context: APIRequestContext.self)
        router.middlewares.add(MetricsMiddleware(metrics: metrics))
        router.middlewares.add(TraceMiddleware())
        router.middlewares.add(ProblemMiddleware())
        router.get("/healthz") { _, _ in Self.json(["status": "ok"]) }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.render())))
        }
        router.get("/readyz") { _, _ in
            let checks = await readiness()
            let ready = checks.values.allSatisfy { $0 }
            return Self.json(
                ["status": ready ? "ready" : "not ready", "checks": checks.mapValues { $0 ? "up" : "down" }],
                status: ready ? .ok : .serviceUnavailable)
        }
        let scans = router.group("/api/v1/scans")
        scans.post { request, context in try await create(request, context) }
        scans.get { request, context in try await list(request, context) }
        scans.get("{id}") { request, context in
            let caller = try await authenticator.authenticate(request, context)
            let scan = try await mapped {
                try await service.getScan(organizationID: caller.organizationID, id: try Self.id(context))
            }
            return Self.json(ScanJSON.encode(scan))
        }
        scans.get("{id}/findings") { request, context in try await findings(request, context) }
        scans.patch("{id}") { request, context in try await update(request, context) }
        scans.delete("{id}") { request, context in
            let caller = try await authenticator.authenticate(request, context)
            let scan = try await mapped {
                try await service.cancelScan(
                    organizationID: caller.organizationID, id: try Self.id(context), requestedBy: caller.subject,
                    traceparent: TraceContext.current?.traceparent)
            }
            metrics.scans("canceled").increment()
            return Self.json(ScanJSON.encode(scan))
        }
        let webhooks = router.group("/api/v1/webhooks")
        // Managing webhooks (where scan results are sent, with which secret) is the
        // organization admins' business, as projects are.
        webhooks.post { request, context in
            let caller = try await organizationAdmin(request, context)
            let create = try WebhookJSON.decodeCreate(Data(buffer: try await Self.body(of: request)))
            let created = try await mapped {
                try await service.webhooks.create(
                    organizationID: caller.organizationID, request: create,
                    actor: AdminActor(subject: caller.subject, via: "http"))
            }
            var response = Self.json(WebhookJSON.encode(created), status: .created)
            response.headers[.location] = "/api/v1/webhooks/\(created.id.uuidString.lowercased())"
            return response
        }
        webhooks.get { request, context in
            let caller = try await organizationAdmin(request, context)
            let items = try await mapped { try await service.webhooks.list(organizationID: caller.organizationID) }
            var out = JSONText()
            out.raw("{\"items\":[")
            for (index, item) in items.enumerated() {
                if index > 0 { out.raw(",") }
                out.raw(WebhookJSON.encode(item).text)
            }
            out.raw("]}")
            return Self.json(out)
        }
        webhooks.delete("{id}") { request, context in
            let caller = try await organizationAdmin(request, context)
            guard let text = context.parameters.get("id"), let id = UUID(uuidString: text) else {
                throw Problem(.notFound, title: "Not found", detail: "no such webhook subscription")
            }
            try await mapped {
                try await service.webhooks.delete(
                    organizationID: caller.organizationID, id: id,
                    actor: AdminActor(subject: caller.subject, via: "http"))
            }
            return Response(status: .noContent)
        }
        addAdminRoutes(to: router)
        // Known paths answer other methods with 405 and the allowed ones.
        let allowed: [(RouterPath, [HTTPRequest.Method])] =
            Self.adminPaths + [
                ("/healthz", [.get]), ("/readyz", [.get]), ("/metrics", [.get]), ("/api/v1/scans", [.get, .post]),
                ("/api/v1/scans/{id}", [.get, .patch, .delete]), ("/api/v1/scans/{id}/findings", [.get]),
                ("/api/v1/webhooks", [.get, .post]), ("/api/v1/webhooks/{id}", [.delete]),
            ]
        let every: [HTTPRequest.Method] = [
            .get, .head, .post, .put, .patch, .delete, .options, .trace, .connect, HTTPRequest.Method("QUERY")!,
        ]
        for (path, methods) in allowed {
            let allow = methods.map(\.rawValue).joined(separator: ", ")
            for method in every where !methods.contains(method) && !(method == .head && methods.contains(.get)) {
                router.on(path, method: method) { _, _ -> Response in
                    throw Problem(
                        .methodNotAllowed, title: "Method not allowed", detail: "allowed: \(allow)", allow: allow)
                }
            }
        }
        return router
    }

    // MARK: Handlers

    func create(_ request: Request, _ context: APIRequestContext) async throws -> Response {
        let caller = try await authenticator.authenticate(request, context)
        let body = try await Self.body(of: request)
        let create = try CreateScanJSON.decode(Data(buffer: body))
        let created = try await mapped {
            try await service.createScan(
                organizationID: caller.organizationID, request: create,
                idempotencyKey: request.headers[HTTPField.Name("Idempotency-Key")!],
                traceparent: TraceContext.current?.traceparent)
        }
        if !created.replayed { metrics.scans("queued").increment() }
        var response = Self.json(ScanJSON.encode(created.scan), status: .created)
        response.headers[.location] = "/api/v1/scans/\(created.scan.id.uuidString.lowercased())"
        if created.replayed { response.headers[HTTPField.Name("Idempotency-Replayed")!] = "true" }
        return response
    }

    func list(_ request: Request, _ context: APIRequestContext) async throws -> Response {
        let caller = try await authenticator.authenticate(request, context)
        let query = request.uri.queryParameters
        func uuid(_ name: String) throws -> UUID? {
            guard let text = query[name[...]] else { return nil }
            guard let value = UUID(uuidString: String(text)) else {
                throw Problem(.badRequest, title: "Invalid request", detail: "not a UUID", field: name)
            }
            return value
        }
        func date(_ name: String) throws -> Date? {
            guard let text = query[name[...]] else { return nil }
            guard let value = try? Date(String(text), strategy: .iso8601) else {
                throw Problem(.badRequest, title: "Invalid request", detail: "not an RFC 3339 timestamp", field: name)
            }
            // Calendars disagree before 1582 and the store covers the service's lifetime: keep it sane.
            guard value >= Date(timeIntervalSince1970: 0), value < Date(timeIntervalSince1970: 253_402_300_800) else {
                throw Problem(
                    .badRequest, title: "Invalid request", detail: "between 1970-01-01 and 9999-12-31", field: name)
            }
            return value
        }
        var filter = ScanService.ListFilter(projectID: try uuid("project_id"))
        if let status = query["status"] {
            guard let value = ScanStatus(rawValue: String(status)) else {
                throw Problem(.badRequest, title: "Invalid request", detail: "unknown status", field: "status")
            }
            filter.status = value
        }
        filter.createdAfter = try date("created_after")
        filter.createdBefore = try date("created_before")
        var pageSize = 50
        if let text = query["page_size"] {
            guard let value = Int(String(text)) else {
                throw Problem(.badRequest, title: "Invalid request", detail: "not an integer", field: "page_size")
            }
            pageSize = value
        }
        let cursor = query["cursor"].map(String.init)
        let page = try await mapped {
            try await service.listScans(
                organizationID: caller.organizationID, filter: filter, pageSize: pageSize, cursor: cursor)
        }
        var body = JSONText()
        body.raw("{\"items\":[")
        for (index, scan) in page.scans.enumerated() {
            if index > 0 { body.raw(",") }
            ScanJSON.write(scan, into: &body)
        }
        body.raw("],\"next_cursor\":")
        if let next = page.nextCursor { body.string(next) } else { body.raw("null") }
        body.raw("}")
        return Self.json(body)
    }

    /// `PATCH /api/v1/scans/{id}` with `{"labels": {…}}`: replaces the labels, nothing else.
    func update(_ request: Request, _ context: APIRequestContext) async throws -> Response {
        let caller = try await authenticator.authenticate(request, context)
        let body = try await Self.body(of: request)
        struct Patch: Decodable { var labels: [String: String] }
        let patch: Patch
        do {
            patch = try JSONDecoder().decode(Patch.self, from: Data(buffer: body))
        } catch {
            throw Problem(
                .badRequest, title: "Invalid request",
                detail: "send {\"labels\": {\"key\": \"value\"}}; only labels can change",
                field: "labels")
        }
        let scan = try await mapped {
            try await service.updateScanLabels(
                organizationID: caller.organizationID, id: try Self.id(context), labels: patch.labels)
        }
        return Self.json(ScanJSON.encode(scan))
    }

    func findings(_ request: Request, _ context: APIRequestContext) async throws -> Response {
        let caller = try await authenticator.authenticate(request, context)
        let query = request.uri.queryParameters
        var filter = ScanService.FindingsFilter()
        if let text = query["severity"] {
            for part in text.split(separator: ",", omittingEmptySubsequences: false) {
                guard let severity = Severity(rawValue: String(part)) else {
                    throw Problem(
                        .badRequest, title: "Invalid request",
                        detail: "severity is one of critical, high, medium, low, info", field: "severity")
                }
                filter.severities.append(severity)
            }
        }
        filter.scanner = query["scanner"].map(String.init)
        filter.pathPrefix = query["path_prefix"].map(String.init)
        var pageSize = 100
        if let text = query["page_size"] {
            guard let value = Int(String(text)) else {
                throw Problem(.badRequest, title: "Invalid request", detail: "not an integer", field: "page_size")
            }
            pageSize = value
        }
        let scanID = try Self.id(context)
        let cursor = query["cursor"].map(String.init)
        let page = try await mapped {
            try await service.listFindings(
                organizationID: caller.organizationID, scanID: scanID, filter: filter, pageSize: pageSize,
                cursor: cursor)
        }
        let items: [[String: Any]] = page.findings.map { finding in
            [
                "id": finding.id.uuidString.lowercased(), "scanner": finding.scanner, "rule_id": finding.ruleID,
                "severity": finding.severity.rawValue, "title": finding.title, "message": finding.message,
                "path": finding.path, "line": finding.line ?? NSNull(), "column": finding.column ?? NSNull(),
                "cwe": finding.cwe, "fingerprint": finding.fingerprint,
            ]
        }
        let next: Any = page.nextCursor ?? NSNull()
        return Self.json(["items": items, "next_cursor": next])
    }

    // MARK: Helpers

    /// The request body, refused with 413 past ``maximumBodyBytes``.
    static func body(of request: Request) async throws -> ByteBuffer {
        do {
            return try await request.body.collect(upTo: maximumBodyBytes)
        } catch {
            throw Problem(.contentTooLarge, title: "Body too large", detail: "at most \(maximumBodyBytes) bytes")
        }
    }

    func mapped<R>(_ body: () async throws -> R) async throws -> R {
        do {
            return try await body()
        } catch let error as ScanServiceError {
            throw Problem(error)
        }
    }

    static func id(_ context: APIRequestContext) throws -> UUID {
        guard let text = context.parameters.get("id"), let id = UUID(uuidString: text) else {
            // Not a scan id: nothing can exist there.
            throw Problem(.notFound, title: "Not found", detail: "no such scan")
        }
        return id
    }

    static func json(_ text: JSONText, status: HTTPResponse.Status = .ok) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: text.bytes)))
    }

    static func json(_ object: Any, status: HTTPResponse.Status = .ok) -> Response {
        let data =
            (try? JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes]))
            ?? Data("{}".utf8)
        return Response(
            status: status, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

/// The JSON shape of a scan (snake_case, RFC 3339 timestamps), written directly: going through
/// `JSONSerialization` and `[String: Any]` cost CreateScan ~13 % of its CPU in dynamic casts.
enum ScanJSON {
    static func encode(_ scan: Scan) -> JSONText {
        var out = JSONText()
        write(scan, into: &out)
        return out
    }

    static func write(_ scan: Scan, into out: inout JSONText) {
        out.raw("{\"id\":")
        out.string(scan.id.uuidString.lowercased())
        out.raw(",\"organization_id\":")
        out.string(scan.organizationID.uuidString.lowercased())
        out.raw(",\"project_id\":")
        out.string(scan.projectID.uuidString.lowercased())
        out.raw(",\"status\":")
        out.string(scan.status.rawValue)
        out.raw(",\"scan_types\":[")
        for (index, type) in scan.scanTypes.enumerated() {
            if index > 0 { out.raw(",") }
            out.string(type.rawValue)
        }
        out.raw("],\"artifact\":{\"url\":")
        out.string(scan.artifactURL)
        if let sha = scan.artifactSHA256 {
            out.raw(",\"sha256\":")
            out.string(sha)
        }
        out.raw("},\"attempt\":\(scan.attempt),\"timeout_seconds\":\(scan.timeoutSeconds),\"labels\":{")
        for (index, (key, value)) in scan.labels.sorted(by: { $0.key < $1.key }).enumerated() {
            if index > 0 { out.raw(",") }
            out.string(key)
            out.raw(":")
            out.string(value)
        }
        out.raw("},\"failure_reason\":")
        if let reason = scan.failureReason { out.string(reason) } else { out.raw("null") }
        let c = scan.counts
        out.raw(
            ",\"findings\":{\"critical\":\(c.critical),\"high\":\(c.high),\"medium\":\(c.medium),\"low\":\(c.low),\"info\":\(c.info)}"
        )
        out.raw(",\"created_at\":")
        out.string(RFC3339.string(from: scan.createdAt))
        out.raw(",\"updated_at\":")
        out.string(RFC3339.string(from: scan.updatedAt))
        out.raw(",\"finished_at\":")
        if let finished = scan.finishedAt { out.string(RFC3339.string(from: finished)) } else { out.raw("null") }
        out.raw("}")
    }
}

/// Decoding `POST /api/v1/scans` with errors that name the field.
enum CreateScanJSON {
    struct Body: Decodable {
        struct Project: Decodable {
            var id: String?
            var external_key: String?
        }
        struct Artifact: Decodable {
            var url: String
            var sha256: String?
        }
        var project: Project
        var scan_types: [String]?
        var artifact: Artifact
        var timeout_seconds: Int?
        var labels: [String: String]?
    }

    static func decode(_ data: Data) throws -> CreateScanRequest {
        try Problem.refuseNulls(data)
        let body: Body
        do {
            body = try JSONDecoder().decode(Body.self, from: data)
        } catch let error as DecodingError {
            throw Problem(decoding: error)
        }
        var projectID: UUID?
        if let text = body.project.id {
            guard let id = UUID(uuidString: text) else {
                throw Problem(.badRequest, title: "Invalid request", detail: "not a UUID", field: "project.id")
            }
            projectID = id
        }
        return CreateScanRequest(
            project: .init(id: projectID, externalKey: body.project.external_key), scanTypes: body.scan_types ?? [],
            artifactURL: body.artifact.url, artifactSHA256: body.artifact.sha256, timeoutSeconds: body.timeout_seconds,
            labels: body.labels ?? [:])
    }
}

/// The JSON of webhook subscriptions (snake_case, RFC 3339).
enum WebhookJSON {
    static func encode(_ item: WebhookSubscription) -> JSONText {
        var out = JSONText()
        out.raw("{\"id\":")
        out.string(item.id.uuidString.lowercased())
        out.raw(",\"url\":")
        out.string(item.url)
        out.raw(",\"events\":[")
        for (index, event) in item.events.enumerated() {
            if index > 0 { out.raw(",") }
            out.string(event)
        }
        out.raw("],\"minimum_severity\":")
        if let minimum = item.minimumSeverity { out.string(minimum.rawValue) } else { out.raw("null") }
        out.raw(",\"payload_format\":")
        out.string(item.payloadFormat)
        out.raw(",\"enabled\":\(item.enabled),\"created_at\":")
        out.string(RFC3339.string(from: item.createdAt))
        if let secret = item.secret {
            out.raw(",\"secret\":")
            out.string(secret)
        }
        out.raw("}")
        return out
    }

    struct Body: Decodable {
        var url: String
        var secret: String?
        var events: [String]?
        var minimum_severity: String?
        var payload_format: String?
    }

    static func decodeCreate(_ data: Data) throws -> CreateWebhookRequest {
        try Problem.refuseNulls(data)
        let body: Body
        do {
            body = try JSONDecoder().decode(Body.self, from: data)
        } catch let error as DecodingError {
            throw Problem(decoding: error)
        }
        return CreateWebhookRequest(
            url: body.url, secret: body.secret, events: body.events, minimumSeverity: body.minimum_severity,
            payloadFormat: body.payload_format)
    }
}

extension Problem {
    /// No field of these bodies may be null (an optional one is left out instead): 400 naming the
    /// first null found. Invalid JSON is left to the decoder's own error.
    static func refuseNulls(_ data: Data) throws {
        guard let root = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) else { return }
        func walk(_ value: Any, _ path: String) throws {
            if value is NSNull {
                throw Problem(
                    .badRequest, title: "Invalid request",
                    detail: "\(path.isEmpty ? "the body" : path) must not be null",
                    field: path.isEmpty ? "body" : path)
            }
            if let object = value as? [String: Any] {
                for key in object.keys.sorted() { try walk(object[key]!, path.isEmpty ? key : "\(path).\(key)") }
            } else if let array = value as? [Any] {
                for (index, element) in array.enumerated() { try walk(element, "\(path)[\(index)]") }
            }
        }
        try walk(root, "")
    }

    /// A body that did not decode: 400 naming the field and why.
    init(decoding error: DecodingError) {
        let (path, reason): ([CodingKey], String)
        switch error {
        case .keyNotFound(let key, let context): (path, reason) = (context.codingPath + [key], "is required")
        case .typeMismatch(_, let context): (path, reason) = (context.codingPath, "has the wrong type")
        case .valueNotFound(_, let context): (path, reason) = (context.codingPath, "must not be null")
        case .dataCorrupted(let context):
            (path, reason) = (context.codingPath, context.codingPath.isEmpty ? "is not valid JSON" : "is invalid")
        @unknown default: (path, reason) = ([], "is invalid")
        }
        let field = path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
            .replacingOccurrences(of: ".[", with: "[")
        self.init(
            .badRequest, title: "Invalid request", detail: "\(field.isEmpty ? "the body" : field) \(reason)",
            field: field.isEmpty ? "body" : field)
    }
}
