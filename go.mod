module github.com/pipestream/pipestream

go 1.26.8
