# Copyright 2026 The token-broker authors
# SPDX-License-Identifier: Apache-2.0
