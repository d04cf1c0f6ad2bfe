"""Offline stand-in for @rules_cc//cc:defs.bzl: each rule is Bazel's native one.

Bazel 4.2.3's own @bazel_tools BUILD files load these names, so Bazel would otherwise download rules_cc
before it can run even a py_test. The project has no C++ code; these only have to load and forward.
"""

def cc_binary(**attrs):
    native.cc_binary(**attrs)

def cc_import(**attrs):
    native.cc_import(**attrs)

def cc_library(**attrs):
    native.cc_library(**attrs)

def cc_proto_library(**attrs):
    native.cc_proto_library(**attrs)

def cc_test(**attrs):
    native.cc_test(**attrs)

def cc_toolchain(**attrs):
    native.cc_toolchain(**attrs)

def cc_toolchain_suite(**attrs):
    native.cc_toolchain_suite(**attrs)

def objc_library(**attrs):
    native.objc_library(**attrs)
