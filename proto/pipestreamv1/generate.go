package pipestreamv1

// The generated pipestream.pb.go is committed, so building needs neither
// protoc nor the plugin; only changing pipestream.proto does. To regenerate,
// install protoc (Debian/Ubuntu: apt-get install protobuf-compiler) and the
// Go plugin at the version go.mod pins for the runtime:
//
//	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//
// then run go generate ./proto/... from the module root.

//go:generate protoc --go_out=. --go_opt=paths=source_relative pipestream.proto membership.proto
