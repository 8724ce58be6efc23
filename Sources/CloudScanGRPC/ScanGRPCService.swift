import CloudScanAuth
import CloudScanCore
import CloudScanPostgres
import CloudScanService
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import SwiftProtobuf
import X509

/// `cloudscan.v1.ScanService` over the same service layer as the HTTP API.
///
/// Every RPC authenticates first (bearer token in `authorization` metadata, or the mTLS client
/// certificate), then calls ``ScanService`` scoped to the caller's organization. Errors map to
/// gRPC status codes; INVALID_ARGUMENT carries the offending field in `cloudscan-field` metadata,
/// RESOURCE_EXHAUSTED the wait in `retry-after`.
public struct ScanGRPCService: Cloudscan_V1_ScanService.ServiceProtocol {
    let service: ScanService
    let authenticator: any Authenticator
    let hub: ScanWatchHub
    let observe: @Sendable (_ method: String, _ code: String, _ duration: Duration) -> Void
    let logger: Logger

    public init(
        service: ScanService, authenticator: any Authenticator, hub: ScanWatchHub,
        logger: Logger = Logger(label: "cloudscan.grpc"),
        observe: @escaping @Sendable (_ method: String, _ code: String, _ duration: Duration) -> Void = { _, _, _ in }
    ) {
        self.service = service
        self.authenticator = authenticator
        self.hub = hub
        self.logger = logger
        self.observe = observe
    }

    /// The status for `error`; an unexpected one is logged here (the caller only sees INTERNAL).
    func status(_ error: any Error, _ method: String) -> RPCError {
        let rpcError = Self.rpcError(error)
        if rpcError.code == .internalError {
            logger.error("RPC failed", metadata: ["method": "\(method)", "error": "\(error)"])
        }
        return rpcError
    }

    // MARK: RPCs

    public func createScan(request: ServerRequest<Cloudscan_V1_CreateScanRequest>, context: ServerContext)
        async throws -> ServerResponse<Cloudscan_V1_CreateScanResponse>
    {
        try await unary("CreateScan", request, context) { caller, message in
            var project = ScanCreateMessage.ProjectReference()
            switch message.project.project {
            case .id(let text):
                guard let id = UUID(uuidString: text) else { throw Self.invalid("project.id", "not a UUID") }
                project.id = id
            case .externalKey(let key): project.externalKey = key
            case nil: break
            }
            let created = try await service.createScan(
                organizationID: caller.organizationID,
                request: CreateScanRequest(
                    project: project, scanTypes: message.scanTypes, artifactURL: message.artifact.url,
                    artifactSHA256: message.artifact.sha256.isEmpty ? nil : message.artifact.sha256,
                    timeoutSeconds: message.timeoutSeconds == 0 ? nil : Int(message.timeoutSeconds),
                    labels: message.labels),
                idempotencyKey: request.metadata[stringValues: "idempotency-key"].first(where: { _ in true }),
                traceparent: TraceContext.current?.traceparent)
            var response = Cloudscan_V1_CreateScanResponse()
            response.scan = Self.message(created.scan)
            response.replayed = created.replayed
            return response
        }
    }

    public func getScan(request: ServerRequest<Cloudscan_V1_GetScanRequest>, context: ServerContext) async throws
        -> ServerResponse<Cloudscan_V1_Scan>
    {
        try await unary("GetScan", request, context) { caller, message in
            Self.message(
                try await service.getScan(organizationID: caller.organizationID, id: try Self.uuid(message.id)))
        }
    }

    public func listScans(request: ServerRequest<Cloudscan_V1_ListScansRequest>, context: ServerContext)
        async throws -> ServerResponse<Cloudscan_V1_ListScansResponse>
    {
        try await unary("ListScans", request, context) { caller, message in
            var filter = ScanService.ListFilter()
            if !message.projectID.isEmpty { filter.projectID = try Self.uuid(message.projectID, field: "project_id") }
            if message.status != .unspecified { filter.status = try Self.status(message.status) }
            if message.hasCreatedAfter { filter.createdAfter = message.createdAfter.date }
            if message.hasCreatedBefore { filter.createdBefore = message.createdBefore.date }
            let page = try await service.listScans(
                organizationID: caller.organizationID, filter: filter,
                pageSize: message.pageSize == 0 ? 50 : Int(message.pageSize), cursor: message.pageToken)
            var response = Cloudscan_V1_ListScansResponse()
            response.scans = page.scans.map(Self.message)
            response.nextPageToken = page.nextCursor ?? ""
            return response
        }
    }

    public func cancelScan(request: ServerRequest<Cloudscan_V1_CancelScanRequest>, context: ServerContext)
        async throws -> ServerResponse<Cloudscan_V1_Scan>
    {
        try await unary("CancelScan", request, context) { caller, message in
            Self.message(
                try await service.cancelScan(
                    organizationID: caller.organizationID, id: try Self.uuid(message.id), requestedBy: caller.subject,
                    traceparent: TraceContext.current?.traceparent))
        }
    }

    public func getFindings(request: ServerRequest<Cloudscan_V1_GetFindingsRequest>, context: ServerContext)
        async throws -> ServerResponse<Cloudscan_V1_GetFindingsResponse>
    {
        try await unary("GetFindings", request, context) { caller, message in
            var filter = ScanService.FindingsFilter()
            filter.severities = try message.severities.map { value in
                guard let severity = Self.severity(value) else { throw Self.invalid("severities", "unknown severity") }
                return severity
            }
            filter.scanner = message.scanner.isEmpty ? nil : message.scanner
            filter.pathPrefix = message.pathPrefix.isEmpty ? nil : message.pathPrefix
            let page = try await service.listFindings(
                organizationID: caller.organizationID, scanID: try Self.uuid(message.scanID, field: "scan_id"),
                filter: filter, pageSize: message.pageSize == 0 ? 100 : Int(message.pageSize),
                cursor: message.pageToken)
            var response = Cloudscan_V1_GetFindingsResponse()
            response.findings = page.findings.map(Self.message)
            response.nextPageToken = page.nextCursor ?? ""
            return response
        }
    }

    public func updateScan(request: ServerRequest<Cloudscan_V1_UpdateScanRequest>, context: ServerContext)
        async throws -> ServerResponse<Cloudscan_V1_Scan>
    {
        try await unary("UpdateScan", request, context) { caller, message in
            Self.message(
                try await service.updateScanLabels(
                    organizationID: caller.organizationID, id: try Self.uuid(message.id), labels: message.labels))
        }
    }

    public func watchScan(request: ServerRequest<Cloudscan_V1_WatchScanRequest>, context: ServerContext)
        async throws -> StreamingServerResponse<Cloudscan_V1_ScanEvent>
    {
        let started = ContinuousClock.now
        let changes: AsyncThrowingStream<ScanChange, any Error>
        do {
            let caller = try await authenticate(request.metadata, context)
            changes = try await service.watchScan(
                organizationID: caller.organizationID, id: try Self.uuid(request.message.id), hub: hub)
        } catch {
            let rpcError = status(error, "WatchScan")
            observe("WatchScan", "\(rpcError.code)", ContinuousClock.now - started)
            return StreamingServerResponse(error: rpcError)
        }
        return StreamingServerResponse { writer in
            do {
                for try await change in changes {
                    var event = Cloudscan_V1_ScanEvent()
                    event.scan = Self.message(change.scan)
                    event.fromStatus = change.fromStatus.map(Self.message) ?? .unspecified
                    event.toStatus = Self.message(change.toStatus)
                    event.reason = change.reason ?? ""
                    event.at = Google_Protobuf_Timestamp(date: change.at)
                    event.sequence = change.sequence
                    try await writer.write(event)
                }
            } catch {
                let rpcError = status(error, "WatchScan")
                observe("WatchScan", "\(rpcError.code)", ContinuousClock.now - started)
                throw rpcError
            }
            observe("WatchScan", "ok", ContinuousClock.now - started)
            return [:]
        }
    }

    // MARK: Plumbing

    /// Authenticates, runs `body`, maps errors, records the outcome.
    func unary<Request, Response>(
        _ method: String, _ request: ServerRequest<Request>, _ context: ServerContext,
        _ body: (Caller, Request) async throws -> Response
    ) async throws -> ServerResponse<Response> {
        let started = ContinuousClock.now
        do {
            let caller = try await authenticate(request.metadata, context)
            let response = try await LogContext.with(
                [
                    "grpc_method": method, "organization_id": caller.organizationID.uuidString.lowercased(),
                    "subject": caller.subject,
                ], trace: GRPCTrace.continued(request.metadata)
            ) { try await body(caller, request.message) }
            observe(method, "ok", ContinuousClock.now - started)
            return ServerResponse(message: response)
        } catch {
            let rpcError = status(error, method)
            observe(method, "\(rpcError.code)", ContinuousClock.now - started)
            return ServerResponse(error: rpcError)
        }
    }

    func authenticate(_ metadata: Metadata, _ context: ServerContext) async throws -> Caller {
        var credentials = Credentials(
            authorization: metadata[stringValues: "authorization"].first(where: { _ in true }),
            developmentOrganization: metadata[stringValues: "x-cloudscan-organization"].first(where: { _ in true }),
            developmentSubject: metadata[stringValues: "x-cloudscan-subject"].first(where: { _ in true }),
            developmentRoles: metadata[stringValues: "x-cloudscan-roles"].first(where: { _ in true }))
        if let posix = context.transportSpecific as? HTTP2ServerTransport.Posix.Context,
            let certificate = posix.peerCertificate
        {
            credentials.clientCertificate = ClientCertificate(certificate)
        }
        return try await authenticator.authenticate(credentials)
    }

    static func rpcError(_ error: any Error) -> RPCError {
        switch error {
        case let error as RPCError: return error
        case let error as AuthenticationError: return RPCError(code: .unauthenticated, message: error.detail)
        case let error as ScanServiceError:
            var metadata: Metadata = [:]
            if let field = error.field { metadata.addString(field, forKey: "cloudscan-field") }
            if let seconds = error.retryAfterSeconds { metadata.addString(String(seconds), forKey: "retry-after") }
            let code: RPCError.Code =
                switch error.code {
                case .invalidArgument: .invalidArgument
                case .notFound: .notFound
                case .conflict: error.field == "Idempotency-Key" ? .alreadyExists : .aborted
                case .failedPrecondition: .failedPrecondition
                case .resourceExhausted: .resourceExhausted
                case .permissionDenied: .permissionDenied
                case .unavailable: .unavailable
                }
            let prefix = error.field.map { "\($0): " } ?? ""
            return RPCError(code: code, message: prefix + error.message, metadata: metadata)
        case is CancellationError: return RPCError(code: .cancelled, message: "cancelled")
        case let error as PostgresError where error.isDataError:
            // The request's values, refused by the store: the caller's fault, never INTERNAL.
            return RPCError(code: .invalidArgument, message: "a value in the request was refused")
        default: return RPCError(code: .internalError, message: "internal error")
        }
    }

    static func invalid(_ field: String, _ message: String) -> ScanServiceError {
        .invalidArgument(field: field, message)
    }

    static func uuid(_ text: String, field: String = "id") throws -> UUID {
        guard let id = UUID(uuidString: text) else { throw invalid(field, "not a UUID") }
        return id
    }

    // MARK: Messages

    static func message(_ scan: Scan) -> Cloudscan_V1_Scan {
        var m = Cloudscan_V1_Scan()
        m.id = scan.id.uuidString.lowercased()
        m.organizationID = scan.organizationID.uuidString.lowercased()
        m.projectID = scan.projectID.uuidString.lowercased()
        m.status = message(scan.status)
        m.scanTypes = scan.scanTypes.map(\.rawValue)
        m.artifact.url = scan.artifactURL
        m.artifact.sha256 = scan.artifactSHA256 ?? ""
        m.attempt = Int32(clamping: scan.attempt)
        m.timeoutSeconds = Int32(clamping: scan.timeoutSeconds)
        m.labels = scan.labels
        m.failureReason = scan.failureReason ?? ""
        m.findings.critical = Int64(scan.counts.critical)
        m.findings.high = Int64(scan.counts.high)
        m.findings.medium = Int64(scan.counts.medium)
        m.findings.low = Int64(scan.counts.low)
        m.findings.info = Int64(scan.counts.info)
        m.createdAt = Google_Protobuf_Timestamp(date: scan.createdAt)
        m.updatedAt = Google_Protobuf_Timestamp(date: scan.updatedAt)
        if let finished = scan.finishedAt { m.finishedAt = Google_Protobuf_Timestamp(date: finished) }
        return m
    }

    static func message(_ finding: Finding) -> Cloudscan_V1_Finding {
        var m = Cloudscan_V1_Finding()
        m.id = finding.id.uuidString.lowercased()
        m.scanner = finding.scanner
        m.ruleID = finding.ruleID
        m.severity = message(finding.severity)
        m.title = finding.title
        m.message = finding.message
        m.path = finding.path
        m.line = Int32(clamping: finding.line ?? 0)
        m.column = Int32(clamping: finding.column ?? 0)
        m.cwe = finding.cwe
        m.fingerprint = finding.fingerprint
        return m
    }

    static func message(_ status: ScanStatus) -> Cloudscan_V1_ScanStatus {
        switch status {
        case .queued: .queued
        case .dispatched: .dispatched
        case .running: .running
        case .retrying: .retrying
        case .completed: .completed
        case .failed: .failed
        case .canceled: .canceled
        }
    }

    static func status(_ status: Cloudscan_V1_ScanStatus) throws -> ScanStatus {
        switch status {
        case .queued: .queued
        case .dispatched: .dispatched
        case .running: .running
        case .retrying: .retrying
        case .completed: .completed
        case .failed: .failed
        case .canceled: .canceled
        case .unspecified, .UNRECOGNIZED: throw invalid("status", "unknown status")
        }
    }

    static func message(_ severity: Severity) -> Cloudscan_V1_Severity {
        switch severity {
        case .critical: .critical
        case .high: .high
        case .medium: .medium
        case .low: .low
        case .info: .info
        }
    }

    static func severity(_ severity: Cloudscan_V1_Severity) -> Severity? {
        switch severity {
        case .critical: .critical
        case .high: .high
        case .medium: .medium
        case .low: .low
        case .info: .info
        case .unspecified, .UNRECOGNIZED: nil
        }
    }
}

/// W3C Trace Context from gRPC metadata: the caller's `traceparent` continued, or a new trace.
enum GRPCTrace {
    static func continued(_ metadata: Metadata) -> TraceContext {
        metadata[stringValues: "traceparent"].first(where: { _ in true }).flatMap(TraceContext.init(traceparent:))?
            .child() ?? TraceContext.root()
    }
}
