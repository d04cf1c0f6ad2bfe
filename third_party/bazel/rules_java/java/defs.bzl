"""Offline stand-in for @rules_java//java:defs.bzl: each rule is Bazel's native one.

Bazel 4.2.3's own @bazel_tools BUILD files load these names, so Bazel would otherwise download
rules_java before it can run even a py_test. The project has no Java code; these only have to load and
forward.
"""

def java_binary(**attrs):
    native.java_binary(**attrs)

def java_import(**attrs):
    native.java_import(**attrs)

def java_library(**attrs):
    native.java_library(**attrs)

def java_proto_library(**attrs):
    native.java_proto_library(**attrs)

def java_runtime(**attrs):
    native.java_runtime(**attrs)

def java_test(**attrs):
    native.java_test(**attrs)

def java_toolchain(**attrs):
    native.java_toolchain(**attrs)
