import Foundation
import GRPCCore
import SwiftProtobuf

/// Server reflection over the descriptor set scripts/generate-grpc embeds, served as
/// `grpc.reflection.v1` (grpcurl and newer tools) and `grpc.reflection.v1alpha` (Python's
/// grpcio-reflection client), so a caller can list and call the services without the .proto.
public struct ReflectionIndex: Sendable {
    /// Serialized FileDescriptorProtos by file name.
    let files: [String: Data]
    /// Each file's direct dependencies.
    let dependencies: [String: [String]]
    /// Fully qualified symbol (service, method, message, enum, field-less) → file name.
    let symbols: [String: String]
    public let services: [String]

    /// The embedded descriptor set.
    public static let embedded: ReflectionIndex = {
        guard let data = Data(base64Encoded: reflectionDescriptorSetBase64),
            let set = try? Google_Protobuf_FileDescriptorSet(serializedBytes: data)
        else { preconditionFailure("the embedded descriptor set is corrupt: run scripts/generate-grpc") }
        return ReflectionIndex(set)
    }()

    init(_ set: Google_Protobuf_FileDescriptorSet) {
        var files: [String: Data] = [:]
        var dependencies: [String: [String]] = [:]
        var symbols: [String: String] = [:]
        var services: [String] = []
        for file in set.file {
            files[file.name] = (try? file.serializedBytes()) ?? Data()
            dependencies[file.name] = file.dependency
            let prefix = file.package.isEmpty ? "" : file.package + "."
            for service in file.service {
                let name = prefix + service.name
                services.append(name)
                symbols[name] = file.name
                for method in service.method { symbols[name + "." + method.name] = file.name }
            }
            func addMessages(_ messages: [Google_Protobuf_DescriptorProto], _ scope: String) {
                for message in messages {
                    let name = scope + message.name
                    symbols[name] = file.name
                    for field in message.field { symbols[name + "." + field.name] = file.name }
                    for nested in message.enumType { symbols[name + "." + nested.name] = file.name }
                    addMessages(message.nestedType, name + ".")
                }
            }
            addMessages(file.messageType, prefix)
            for enumeration in file.enumType {
                symbols[prefix + enumeration.name] = file.name
                for value in enumeration.value { symbols[prefix + value.name] = file.name }
            }
        }
        self.files = files
        self.dependencies = dependencies
        self.symbols = symbols
        self.services = services.sorted()
    }

    /// What one reflection request gets.
    enum Answer {
        case files([Data])
        case services([String])
        case extensionNumbers(type: String, [Int32])
        case error(RPCError.Code, String)
    }

    enum Question {
        case fileByName(String)
        case fileContainingSymbol(String)
        case fileContainingExtension(type: String, number: Int32)
        case extensionNumbers(type: String)
        case listServices
        case none
    }

    func answer(_ question: Question) -> Answer {
        switch question {
        case .listServices: return .services(services)
        case .fileByName(let name):
            guard files[name] != nil else { return .error(.notFound, "no file \(name)") }
            return .files(withDependencies(name))
        case .fileContainingSymbol(let symbol):
            let trimmed = symbol.hasPrefix(".") ? String(symbol.dropFirst()) : symbol
            guard let file = symbols[trimmed] else { return .error(.notFound, "no symbol \(symbol)") }
            return .files(withDependencies(file))
        case .fileContainingExtension(let type, let number):
            return .error(.notFound, "no extension \(number) of \(type)")
        case .extensionNumbers(let type):
            guard symbols[type] != nil else { return .error(.notFound, "no type \(type)") }
            return .extensionNumbers(type: type, [])  // the API declares no extensions
        case .none: return .error(.invalidArgument, "empty reflection request")
        }
    }

    /// The file and everything it imports, the file first.
    private func withDependencies(_ name: String) -> [Data] {
        var seen: Set<String> = []
        var order: [String] = []
        func visit(_ file: String) {
            guard seen.insert(file).inserted else { return }
            order.append(file)
            for dependency in dependencies[file] ?? [] { visit(dependency) }
        }
        visit(name)
        return order.compactMap { files[$0] }
    }
}

/// `grpc.reflection.v1.ServerReflection`.
public struct ReflectionServiceV1: Grpc_Reflection_V1_ServerReflection.ServiceProtocol {
    let index: ReflectionIndex
    public init(index: ReflectionIndex = .embedded) { self.index = index }

    public func serverReflectionInfo(
        request: StreamingServerRequest<Grpc_Reflection_V1_ServerReflectionRequest>, context: ServerContext
    ) async throws -> StreamingServerResponse<Grpc_Reflection_V1_ServerReflectionResponse> {
        StreamingServerResponse { writer in
            for try await message in request.messages {
                var response = Grpc_Reflection_V1_ServerReflectionResponse()
                response.validHost = message.host
                response.originalRequest = message
                let question: ReflectionIndex.Question =
                    switch message.messageRequest {
                    case .fileByFilename(let name): .fileByName(name)
                    case .fileContainingSymbol(let symbol): .fileContainingSymbol(symbol)
                    case .fileContainingExtension(let e):
                        .fileContainingExtension(type: e.containingType, number: e.extensionNumber)
                    case .allExtensionNumbersOfType(let type): .extensionNumbers(type: type)
                    case .listServices: .listServices
                    case nil: .none
                    }
                switch index.answer(question) {
                case .files(let files): response.fileDescriptorResponse.fileDescriptorProto = files
                case .services(let names):
                    response.listServicesResponse.service = names.map { name in
                        var service = Grpc_Reflection_V1_ServiceResponse()
                        service.name = name
                        return service
                    }
                case .extensionNumbers(let type, let numbers):
                    response.allExtensionNumbersResponse.baseTypeName = type
                    response.allExtensionNumbersResponse.extensionNumber = numbers
                case .error(let code, let text):
                    response.errorResponse.errorCode = Int32(code.rawValue)
                    response.errorResponse.errorMessage = text
                }
                try await writer.write(response)
            }
            return [:]
        }
    }
}

/// `grpc.reflection.v1alpha.ServerReflection`: the same answers in the older package.
public struct ReflectionServiceV1Alpha: Grpc_Reflection_V1alpha_ServerReflection.ServiceProtocol {
    let v1: ReflectionServiceV1
    public init(index: ReflectionIndex = .embedded) { v1 = ReflectionServiceV1(index: index) }

    public func serverReflectionInfo(
        request: StreamingServerRequest<Grpc_Reflection_V1alpha_ServerReflectionRequest>, context: ServerContext
    ) async throws -> StreamingServerResponse<Grpc_Reflection_V1alpha_ServerReflectionResponse> {
        // The two packages' messages are wire-identical: translate through the bytes.
        let translated = StreamingServerRequest<Grpc_Reflection_V1_ServerReflectionRequest>(
            metadata: request.metadata,
            messages: RPCAsyncSequence(
                wrapping: request.messages.map { message in
                    try Grpc_Reflection_V1_ServerReflectionRequest(
                        serializedBytes: try message.serializedBytes() as [UInt8])
                }))
        let response = try await v1.serverReflectionInfo(request: translated, context: context)
        return StreamingServerResponse { writer in
            let contents = try response.accepted.get()
            return try await contents.producer(
                RPCWriter(
                    wrapping: TranslatingWriter(base: writer)))
        }
    }

    struct TranslatingWriter: RPCWriterProtocol {
        let base: RPCWriter<Grpc_Reflection_V1alpha_ServerReflectionResponse>
        func write(_ element: Grpc_Reflection_V1_ServerReflectionResponse) async throws {
            try await base.write(
                Grpc_Reflection_V1alpha_ServerReflectionResponse(
                    serializedBytes: try element.serializedBytes() as [UInt8]))
        }
        func write(contentsOf elements: some Sequence<Grpc_Reflection_V1_ServerReflectionResponse>) async throws {
            for element in elements { try await write(element) }
        }
    }
}
