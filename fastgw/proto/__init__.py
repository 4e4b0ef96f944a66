"""fastgw.proto"""
